from mfs.sim.cli import main

raise SystemExit(main())
