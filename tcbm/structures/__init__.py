"""All-atom topologies (PDB) of the built-in systems."""
