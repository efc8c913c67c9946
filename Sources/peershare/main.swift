import CSystemShims
import Glibc
import PeerShareCLI

// Every process (supervisor and workers are this binary) moves chunk-sized buffers.
peershare_tune_allocator()
// A reader of our output that goes away (`peershare get LINK | head -1`) must not end a
// download or a share: writes to it fail with EPIPE and are dropped (`StandardStream`).
signal(SIGPIPE, SIG_IGN)
PeerShareCommand.main()
