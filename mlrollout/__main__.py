from mlrollout.cli.app import main

main()
