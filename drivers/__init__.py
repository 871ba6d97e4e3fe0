"""Hardware drivers (serial modems) that know nothing of the appliance around them."""
