from pneumoscreen.cli import main

main()
