from elite_cli.commands import main

main()
