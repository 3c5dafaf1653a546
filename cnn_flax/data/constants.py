"""Numbers fixed by the published weights and datasets, in a module that imports nothing.

Sources, preprocessing, pretrained weights and export all need them; keeping them here lets each import
the number without importing the others.
"""

# Keras's 'caffe' preprocessing for VGG and the ImageNet weights: RGB→BGR, minus these BGR means.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# torchvision's ImageNet weights: RGB in [0, 1], minus this mean, divided by this standard deviation.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
