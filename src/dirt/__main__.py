from dirt.cli import main

main()
