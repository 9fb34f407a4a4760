from kvmctl.cli import main

raise SystemExit(main())
