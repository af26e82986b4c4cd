"""mashup.eval"""
