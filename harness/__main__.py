from __future__ import annotations

from shutdown_harness.cli import main

raise SystemExit(main())
