from elite_cli.cli import main

main()
