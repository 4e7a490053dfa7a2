import sys

from chatserv.client.app import main

sys.exit(main())
