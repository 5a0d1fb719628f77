"""The hospital node: Flower ClientApp glue around the site's data, training and policy."""
