from fragility.cli import main

raise SystemExit(main())
