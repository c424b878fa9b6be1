from dicomflow_desktop.app import main

raise SystemExit(main())
