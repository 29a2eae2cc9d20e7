from faxbridge.cli import main

raise SystemExit(main())
