from clients.cli.main import main

main()
