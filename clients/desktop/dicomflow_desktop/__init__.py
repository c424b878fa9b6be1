"""dicomflow desktop client: the search, download, unpack and viewer launch of
`dicomflow_client` behind a Qt window a clinician can use without a terminal."""
