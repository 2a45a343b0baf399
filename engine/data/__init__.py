"""The arrays a run trains and is judged on: a segmentation run's splits (`segmentation`), a
transfer run's source and target splits (`transfer`) and the augmentation recipes (`augmentation`)."""
