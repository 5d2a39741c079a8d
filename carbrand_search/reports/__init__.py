"""What a finished search shows: test-split evaluation, reports, comparisons, Grad-CAM and
predictions from a stored trial. Imports search/ and everything below it."""
