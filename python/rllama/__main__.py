from rllama.cli import main

raise SystemExit(main())
