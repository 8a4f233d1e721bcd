"""edgemoe runtime: load a bundle, keep hot experts resident, page the rest from disk."""
