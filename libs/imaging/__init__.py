"""Rendering DICOM images for display: decode one frame, apply the Modality and VOI LUTs
(or colour), encode JPEG. Pure library code; the JPG converter and the API run it in
isolated workers (libs/runtime/sandbox.py)."""
