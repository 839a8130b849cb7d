from sandboxer.cli.main import main

raise SystemExit(main())
