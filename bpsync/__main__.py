from bpsync.entry import main

main()
