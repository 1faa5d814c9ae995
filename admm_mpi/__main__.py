from admm_mpi.cli import main

raise SystemExit(main())
