"""python -m harness.cli"""
from harness.cli import main

raise SystemExit(main())
