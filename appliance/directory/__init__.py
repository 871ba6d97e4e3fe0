"""The site directory: extensions, devices and their SIP credentials, ring groups, dial plan,
emergency settings and inbound routing. Delivered by the cloud as signed bundles (see
``appliance/sync``); the same JSON shape can be read from a local file."""
