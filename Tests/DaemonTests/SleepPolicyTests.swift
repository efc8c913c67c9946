import Testing

@testable import Daemon

@Suite struct SleepPolicyTests {
    /// Feeds the policy looks of (time, connections, activity); returns its answers.
    func answers(_ policy: inout SleepPolicy, _ looks: [(Double, UInt64, UInt64)]) -> [Bool] {
        looks.map { policy.observe(now: $0.0, connections: $0.1, activity: $0.2) }
    }

    @Test func anItemSleepsOnlyAfterItsIdleTimeWithNoPeerAndNoActivity() {
        var policy = SleepPolicy(idleSeconds: 60)
        // The first look only learns the counters; quiet starts at the second.
        let said = answers(&policy, [(0, 0, 5), (10, 0, 5), (69, 0, 5), (70, 0, 5)])
        #expect(said == [false, false, false, true])
    }

    @Test func aConnectedPeerOrAnyActivityStartsTheIdleTimeAgain() {
        var policy = SleepPolicy(idleSeconds: 60)
        let said = answers(
            &policy,
            [
                (0, 0, 0), (1, 0, 0),
                // A peer connected, even one that moves no byte: awake, and quiet starts over.
                (100, 1, 0), (101, 0, 0), (160, 0, 0),
                // A peer came and went between two looks: the counters moved.
                (170, 0, 9), (171, 0, 9), (230, 0, 9), (231, 0, 9),
            ])
        #expect(said == [false, false, false, false, false, false, false, false, true])
    }

    @Test func zeroMeansNeverAndResetStartsOver() {
        var never = SleepPolicy(idleSeconds: 0)
        #expect(!answers(&never, (0..<10).map { (Double($0) * 1000, 0, 0) }).contains(true))
        var policy = SleepPolicy(idleSeconds: 5)
        _ = answers(&policy, [(0, 0, 3), (1, 0, 3)])
        policy.reset()
        // Woken: a restarted worker counts from zero, which is not activity in itself.
        #expect(answers(&policy, [(100, 0, 0), (101, 0, 0), (106, 0, 0)]) == [false, false, true])
    }
}
