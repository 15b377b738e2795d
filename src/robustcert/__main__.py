from robustcert.cli import main

raise SystemExit(main())
