"""Pipeline factory, demo data and the demo backbone's pretraining step."""
