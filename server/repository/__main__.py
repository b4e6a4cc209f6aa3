import sys

from server.repository.cli import main

sys.exit(main())
