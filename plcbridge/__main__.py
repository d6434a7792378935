from plcbridge.cli import main

raise SystemExit(main())
