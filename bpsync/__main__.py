from bpsync.cli import main

main()
