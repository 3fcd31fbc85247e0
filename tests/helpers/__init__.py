"""What tests share, in one place: real-film datasets and DICOM files, servers and ports, the search command, a
multi-node Ray cluster on one machine. Test modules import from here, never from one another."""
