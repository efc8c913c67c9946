/// The event queue of the simulators (DHT and swarm): a binary min-heap ordered by virtual
/// time, ties broken by insertion order so that a run replays exactly from its seed.
public struct TimedQueue<Element> {
    struct Entry {
        var time: Double
        var sequence: Int
        var element: Element
    }

    private var heap: [Entry] = []
    private var sequence = 0

    public init() {}

    public var isEmpty: Bool { heap.isEmpty }
    public var count: Int { heap.count }
    /// When the next event is due.
    public var nextTime: Double? { heap.first?.time }

    private func less(_ a: Entry, _ b: Entry) -> Bool {
        a.time < b.time || (a.time == b.time && a.sequence < b.sequence)
    }

    public mutating func push(_ element: Element, at time: Double) {
        heap.append(Entry(time: time, sequence: sequence, element: element))
        sequence += 1
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard less(heap[child], heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    public mutating func pop() -> (time: Double, element: Element)? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count && less(heap[left], heap[smallest]) { smallest = left }
            if right < heap.count && less(heap[right], heap[smallest]) { smallest = right }
            if smallest == parent { break }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
        return (top.time, top.element)
    }
}
