"""``python -m protocol.client.cli``: qkvctl without the installed console script."""
from protocol.client.cli import main

main()
