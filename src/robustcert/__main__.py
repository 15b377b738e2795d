from robustcert.cli import main

main()
