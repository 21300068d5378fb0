"""``python -m diffusion_lib train | sample | evaluate`` (see diffusion_lib.cli)."""

from .cli import main

raise SystemExit(main())
