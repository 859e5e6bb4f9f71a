"""lcstore: a lightcurve datastore for time-domain sky surveys."""
