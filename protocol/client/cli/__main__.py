"""``python -m protocol.client.cli``: qkvctl without the installed console script."""
from protocol.client.cli import main

if __name__ == "__main__":  # not when a spawned child (benchmark watch's watcher) imports it
    main()
