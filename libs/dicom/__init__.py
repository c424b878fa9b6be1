"""DICOM helpers shared by the services: UIDs, name search keys, header extraction."""
