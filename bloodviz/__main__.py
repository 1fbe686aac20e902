from bloodviz.cli import main

raise SystemExit(main())
