import PeerShareCLI
PeerShareCommand.main()
