from controlplane.demo.topology import main

raise SystemExit(main())
