import PeerShareCLI

PeerShareCommand.main()
