"""mashup.states"""
