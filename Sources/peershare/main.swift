import CSystemShims
import PeerShareCLI

// Every process (supervisor and workers are this binary) moves chunk-sized buffers.
peershare_tune_allocator()
PeerShareCommand.main()
