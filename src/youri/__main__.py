from youri.cli import main

raise SystemExit(main())
