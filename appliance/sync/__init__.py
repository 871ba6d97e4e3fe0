"""Cloud sync: the mutual-TLS link to the cloud (see service.py for the whole picture).

``appliance.config`` composes every section, including ours (``sync.config``); importing it
first means ``from appliance.sync.config import SyncConfig`` works as a first import too.
"""

import appliance.config  # noqa: F401
