"""Channel providers behind one protocol (see base.py); one module per provider."""
