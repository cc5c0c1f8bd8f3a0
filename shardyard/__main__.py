from shardyard.cli import main

main()
