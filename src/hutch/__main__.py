from hutch._cli_main import main

main()
